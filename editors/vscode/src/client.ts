import * as vscode from "vscode";
import {
  type ConfigurationParams,
  LanguageClient,
  type LanguageClientOptions,
  type ServerOptions,
  State,
} from "vscode-languageclient/node";
import { completionsEnabled, SECTION, serverCommand, serverSettings } from "./settings";
import type { ServerStatus, StatusItem } from "./status";

export const STATUS_NOTIFICATION = "diffgemma/status";

/** A client for `diffgemma-ls`, started from `diffgemma.server.command` as it is now. */
export function createClient(output: vscode.LogOutputChannel, status: StatusItem): LanguageClient {
  const [command, ...args] = serverCommand();
  // A plain Executable (no `transport`): the command already has `--stdio`; TransportKind.stdio would add another.
  const serverOptions: ServerOptions = { command, args };
  const clientOptions: LanguageClientOptions = {
    // every file: the server answers for the model's languages and `diffgemma.languages` only
    documentSelector: [{ scheme: "file" }, { scheme: "untitled" }],
    initializationOptions: { [SECTION]: serverSettings() },
    outputChannel: output,
    middleware: {
      provideInlineCompletionItems: (document, position, context, token, next) =>
        completionsEnabled() ? next(document, position, context, token) : undefined,
      workspace: {
        // answer `workspace/configuration` with the server's keys only, not the extension's own
        configuration: (params: ConfigurationParams) =>
          params.items.map((item) => (item.section === SECTION ? serverSettings() : null)),
      },
    },
  };
  const client = new LanguageClient("diffgemma", "DiffGemma", serverOptions, clientOptions);
  client.onNotification(STATUS_NOTIFICATION, (params: ServerStatus) => status.update(params));
  client.onDidChangeState(({ newState }) => {
    if (newState === State.Stopped) {
      status.update({ state: "error", model: "", lastLatencyMs: null, message: "the server stopped" });
    }
  });
  return client;
}
