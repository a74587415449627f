// Drives code-server in headless Chromium for test_vscode.py: open a file from the Explorer, then either
// ("ghost") type, trigger an inline suggestion, read the ghost text, accept it with Tab, save; or ("fill")
// select lines, pick "Fill Selection with DiffusionGemma" from the editor's context menu, save.
// Usage: node vscode_driver.cjs <job.json>; prints one JSON line with what it saw.
"use strict";
const fs = require("fs");
const path = require("path");

const job = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const { chromium } = require(path.join(job.harness, "node_modules", "playwright-core"));

// Type at the end of the cursor's line, ask for a suggestion, read the ghost text, accept it with Tab, save.
async function ghost(page, editor, status, seen) {
  await page.keyboard.press("End");
  await page.keyboard.type(job.typed, { delay: 40 });
  await page.keyboard.press("Alt+Backslash"); // editor.action.inlineSuggest.trigger

  const shown = editor.locator(".ghost-text-decoration, .ghost-text");
  await shown.first().waitFor({ timeout: job.timeoutMs });
  await page.waitForFunction(
    (want) => [...document.querySelectorAll(".ghost-text-decoration, .ghost-text")]
      .map((el) => el.textContent).join("").replace(/\u00a0/g, " ").includes(want.trim()),
    job.expected, { timeout: job.ghostTimeoutMs, polling: 100 }).catch(() => undefined);
  seen.ghostText = (await shown.allTextContents()).join("\n").replace(/\u00a0/g, " ");
  // after a completion the status bar adds the server's last latency
  await status.filter({ hasText: " ms" }).waitFor({ timeout: job.timeoutMs });
  seen.statusBar = (await status.textContent()).trim();
  await page.screenshot({ path: job.screenshot });

  await page.keyboard.press("Tab");
  await page.keyboard.press("Control+S");
  await page.locator(".tab.active:not(.dirty)").waitFor({ timeout: job.timeoutMs });
}

// Select `job.selectLines` whole lines from the cursor's, fill them from the context menu, save.
async function fill(page, editor, status, seen) {
  for (let i = 0; i < job.selectLines; i++) {
    await page.keyboard.press("Shift+ArrowDown");
  }
  await editor.locator(".view-line", { hasText: job.rightClickOn }).click({ button: "right" });
  const entry = page.locator(".monaco-menu .action-label", { hasText: "Fill Selection with DiffusionGemma" });
  await entry.waitFor({ timeout: job.timeoutMs });
  seen.contextMenu = true;
  await entry.click();
  // monaco's menu sometimes takes the click as a hover only and stays open: Enter runs the highlighted entry
  await entry.waitFor({ state: "hidden", timeout: 2000 }).catch(() => page.keyboard.press("Enter"));
  await page.locator(".tab.active.dirty").waitFor({ timeout: job.ghostTimeoutMs });
  seen.statusBar = (await status.textContent()).trim();
  await page.screenshot({ path: job.screenshot });
  await page.keyboard.press("Control+S");
  await page.locator(".tab.active:not(.dirty)").waitFor({ timeout: job.timeoutMs });
}

async function main() {
  const browser = await chromium.launch({
    executablePath: job.chromium,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const seen = { statusBar: null, ghostText: null, contextMenu: false, error: null };
  const page = await browser.newPage({ viewport: { width: 1100, height: 520 } });
  try {
    await page.goto(`${job.url}/?folder=${encodeURIComponent(job.folder)}`);
    await page.locator(".monaco-workbench").waitFor({ timeout: job.timeoutMs });

    const row = page.locator(".explorer-folders-view .monaco-list-row", { hasText: job.file });
    await row.waitFor({ timeout: job.timeoutMs });
    await row.click();
    const editor = page.locator(".editor-instance .monaco-editor").first();
    await editor.locator(".view-line", { hasText: job.waitForLine }).waitFor({ timeout: job.timeoutMs });

    // the status bar says the model is ready (diffgemma/status from the server)
    // the extension's own item: "<publisher>.<name>.<item id>" (VS Code's progress item names the model too)
    const item = page.locator('[id="diffgemma.diffgemma.diffgemma.status"]');
    const status = item.filter({ hasText: job.modelName, hasNotText: "loading" });
    await status.waitFor({ timeout: job.timeoutMs });

    await editor.locator(".view-line", { hasText: job.waitForLine }).click();
    await page.keyboard.press("Control+G");
    await page.keyboard.type(`${job.line}`);
    await page.keyboard.press("Enter");
    await (job.kind === "fill" ? fill : ghost)(page, editor, status, seen);
  } catch (error) {
    seen.error = String(error);
    await page.screenshot({ path: job.screenshot }).catch(() => undefined);
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(seen) + "\n");
}

main().catch((error) => {
  process.stdout.write(JSON.stringify({ error: String(error) }) + "\n");
  process.exit(1);
});
