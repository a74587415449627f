import * as vscode from "vscode";
import { ExecuteCommandRequest, type LanguageClient, LSPErrorCodes, ResponseError } from "vscode-languageclient/node";

/** The server's command: fill (regenerate) a range of a document and apply the edit through the client. */
const SERVER_FILL = "diffgemma.fill";

/**
 * `DiffGemma: Fill Selection with DiffusionGemma`: regenerate the selection (or, with nothing selected, the
 * empty function body or TODO line at the cursor). The server computes the replacement and applies it with
 * `workspace/applyEdit`, so one Undo reverts it; it changes nothing if the document changed meanwhile.
 */
export async function fillSelection(client: LanguageClient | undefined): Promise<void> {
  const editor = vscode.window.activeTextEditor;
  if (!editor) {
    return;
  }
  if (!client?.isRunning()) {
    void vscode.window.showWarningMessage("DiffGemma: the server is not running (DiffGemma: Restart Server).");
    return;
  }
  const c2p = client.code2ProtocolConverter;
  const params = {
    command: SERVER_FILL,
    arguments: [c2p.asUri(editor.document.uri), c2p.asRange(editor.selection)],
  };
  const options = {
    location: vscode.ProgressLocation.Notification,
    title: "DiffGemma: filling",
    cancellable: true,
  };
  try {
    const result = await vscode.window.withProgress(options, (_progress, token) =>
      client.sendRequest(ExecuteCommandRequest.type, params, token),
    );
    if (!result?.applied) {
      void vscode.window.showInformationMessage("DiffGemma: the model had nothing to fill here.");
    }
  } catch (error) {
    if (error instanceof ResponseError && error.code === LSPErrorCodes.RequestCancelled) {
      return; // the user cancelled the progress notification
    }
    void vscode.window.showErrorMessage(`DiffGemma: fill failed: ${error}`);
  }
}
