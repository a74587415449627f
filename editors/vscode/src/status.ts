import * as path from "path";
import * as vscode from "vscode";

/** The `diffgemma/status` notification's parameters (diffgemma_ls/server.py `send_status`). */
export interface ServerStatus {
  state: "loading" | "ready" | "error";
  model: string;
  lastLatencyMs: number | null;
  message?: string;
  tunedFor?: string;
  backend?: string;
  backendDown?: string;
}

/** One status bar item: loading, ready (model and last latency), off, or error (click for the log). */
export class StatusItem implements vscode.Disposable {
  private readonly item = vscode.window.createStatusBarItem(
    "diffgemma.status",
    vscode.StatusBarAlignment.Right,
    100,
  );
  private status: ServerStatus = { state: "loading", model: "", lastLatencyMs: null };

  constructor(private enabled: boolean) {
    this.item.name = "DiffGemma";
    this.render();
    this.item.show();
  }

  update(status: ServerStatus): void {
    this.status = status;
    this.render();
  }

  setEnabled(enabled: boolean): void {
    this.enabled = enabled;
    this.render();
  }

  dispose(): void {
    this.item.dispose();
  }

  private render(): void {
    const { state, model, lastLatencyMs, message, tunedFor, backend, backendDown } = this.status;
    const name = backend ? "backend" : model ? path.basename(model) : "";
    const serving = backend
      ? `${backend} (prompts from ${model})`
      : tunedFor
        ? `${model}, tuned for ${tunedFor}`
        : model;
    const item = this.item;
    item.backgroundColor = undefined;
    item.command = "diffgemma.toggle";
    if (state === "error") {
      item.text = "$(error) DiffGemma";
      item.tooltip = `DiffGemma: ${message ?? "error"}\nClick for the server log.`;
      item.command = "diffgemma.showLog";
      item.backgroundColor = new vscode.ThemeColor("statusBarItem.errorBackground");
    } else if (backendDown) {
      item.text = "$(warning) DiffGemma: backend down";
      item.tooltip = `DiffGemma: ${backendDown}\nCompletions resume when it answers. Click for the server log.`;
      item.command = "diffgemma.showLog";
      item.backgroundColor = new vscode.ThemeColor("statusBarItem.warningBackground");
    } else if (state === "loading") {
      item.text = `$(loading~spin) DiffGemma: loading${name ? ` ${name}` : ""}`;
      item.tooltip = `DiffGemma: loading ${model || "the server"}…`;
    } else if (!this.enabled) {
      item.text = `$(circle-slash) DiffGemma: off`;
      item.tooltip = `DiffGemma (${serving}) is ready; inline completions are off.\nClick to turn them on.`;
    } else {
      const latency = lastLatencyMs === null ? "" : ` · ${Math.round(lastLatencyMs)} ms`;
      item.text = `$(sparkle) ${name}${tunedFor ? " (tuned)" : ""}${latency}`;
      item.tooltip = `DiffGemma: ${serving} is ready${latency ? `, last completion took${latency.slice(2)}` : ""}.\nClick to turn inline completions off.`;
    }
  }
}
