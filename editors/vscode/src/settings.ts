import * as vscode from "vscode";

/** The server's settings section; the extension's own keys (`enable`, `server.*`) live in it too. */
export const SECTION = "diffgemma";

/** Keys the server reads (diffgemma_ls/config.py CLIENT_KEYS); it reports any other key as unknown. */
const SERVER_KEYS = [
  "model",
  "quantize",
  "device",
  "promptFormat",
  "canvasLength",
  "maxSteps",
  "typingMaxSteps",
  "latencyBudgetMs",
  "debounceMs",
  "typingCopies",
  "candidates",
  "languages",
  "workspaceContext",
  "workspaceMaxFiles",
  "crossFileChars",
  "tunedWeights",
  "threads",
  "backend",
  "backendModel",
  "backendApiKeyEnv",
] as const;

/**
 * Machine-scoped: only the user's (or the remote machine's) settings count, never a workspace's: a
 * repository must not pick the model, the server its code is sent to, or the variable read as a key.
 */
const MACHINE_KEYS: ReadonlySet<string> = new Set(["model", "backend", "backendModel", "backendApiKeyEnv"]);

function config(): vscode.WorkspaceConfiguration {
  return vscode.workspace.getConfiguration(SECTION);
}

/**
 * The section as the server gets it: the values the user set, `null` for the rest, so the server keeps
 * its own default or command-line flag (e.g. `--quantize 8bit` in the server command) for those.
 */
export function serverSettings(): Record<string, unknown> {
  const section = config();
  const settings: Record<string, unknown> = {};
  for (const key of SERVER_KEYS) {
    const found = section.inspect(key);
    const value = MACHINE_KEYS.has(key)
      ? found?.globalValue
      : (found?.workspaceFolderValue ?? found?.workspaceValue ?? found?.globalValue);
    settings[key] = value ?? null;
  }
  return settings;
}

/** The server's command line: program and arguments, `--stdio` included. */
export function serverCommand(): [string, ...string[]] {
  const command = config().inspect<string[]>("server.command");
  const value = command?.globalValue ?? command?.defaultValue;
  if (Array.isArray(value) && value.length > 0 && value.every((part) => typeof part === "string")) {
    return [value[0], ...value.slice(1)];
  }
  return ["diffgemma-ls", "--stdio"];
}

export function completionsEnabled(): boolean {
  return config().get<boolean>("enable", true);
}

export async function setCompletionsEnabled(enabled: boolean): Promise<void> {
  await config().update("enable", enabled, vscode.ConfigurationTarget.Global);
}
