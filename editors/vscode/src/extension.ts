import * as vscode from "vscode";
import { DidChangeConfigurationNotification, type LanguageClient } from "vscode-languageclient/node";
import { createClient } from "./client";
import { fillSelection } from "./fill";
import { completionsEnabled, SECTION, serverCommand, serverSettings, setCompletionsEnabled } from "./settings";
import { StatusItem } from "./status";

let client: LanguageClient | undefined;
let output: vscode.LogOutputChannel;
let status: StatusItem;

async function start(): Promise<void> {
  const starting = createClient(output, status);
  client = starting;
  status.update({ state: "loading", model: "", lastLatencyMs: null });
  try {
    await starting.start();
  } catch (error) {
    const message = `could not start \`${serverCommand().join(" ")}\` (set diffgemma.server.command): ${error}`;
    output.error(message);
    status.update({ state: "error", model: "", lastLatencyMs: null, message });
  }
}

async function stop(): Promise<void> {
  const stopping = client;
  client = undefined;
  try {
    await stopping?.dispose();
  } catch (error) {
    output.warn(`stopping the server: ${error}`); // a server that never started cannot stop
  }
}

async function onConfigurationChanged(event: vscode.ConfigurationChangeEvent): Promise<void> {
  if (event.affectsConfiguration(`${SECTION}.server`)) {
    await stop();
    await start();
    return;
  }
  if (event.affectsConfiguration(`${SECTION}.enable`)) {
    status.setEnabled(completionsEnabled());
  }
  if (event.affectsConfiguration(SECTION) && client?.isRunning()) {
    await client.sendNotification(DidChangeConfigurationNotification.type, {
      settings: { [SECTION]: serverSettings() },
    });
  }
}

async function toggle(): Promise<void> {
  const enabled = !completionsEnabled();
  await setCompletionsEnabled(enabled);
  if (!enabled) {
    await vscode.commands.executeCommand("editor.action.inlineSuggest.hide");
  }
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  output = vscode.window.createOutputChannel("DiffGemma", { log: true });
  status = new StatusItem(completionsEnabled());
  context.subscriptions.push(
    output,
    status,
    vscode.commands.registerCommand("diffgemma.toggle", toggle),
    vscode.commands.registerCommand("diffgemma.trigger", () =>
      vscode.commands.executeCommand("editor.action.inlineSuggest.trigger"),
    ),
    vscode.commands.registerCommand("diffgemma.restart", async () => {
      await stop();
      await start();
    }),
    vscode.commands.registerCommand("diffgemma.showLog", () => output.show(true)),
    vscode.commands.registerCommand("diffgemma.fillSelection", () => fillSelection(client)),
    vscode.workspace.onDidChangeConfiguration(onConfigurationChanged),
  );
  await start();
}

export function deactivate(): Promise<void> {
  return stop();
}
