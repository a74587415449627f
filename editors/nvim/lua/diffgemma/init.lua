--- Inline code completion from a local DiffusionGemma model, served by diffgemma-ls.
---
--- Needs Neovim 0.12 or newer: `vim.lsp.config`/`vim.lsp.enable` and the native
--- `vim.lsp.inline_completion` (ghost text).
local M = {}

--- The options `setup()` takes; each one replaces its default as a whole (`keymaps` key by key).
M.defaults = {
  --- The server's full command line, `--stdio` included.
  cmd = { 'diffgemma-ls', '--stdio' },
  --- The server's `diffgemma` section: model, quantize, device, canvasLength, maxSteps,
  --- latencyBudgetMs, languages, threads (see the server's README).
  settings = {},
  --- The filetypes the server is started for (it answers for its model's languages and
  --- `settings.languages` only).
  filetypes = { 'python', 'javascript', 'javascriptreact', 'typescript', 'typescriptreact', 'go', 'rust' },
  --- Insert-mode keys in the buffers the server is attached to; `false` for none, or a key `false`.
  --- When there is nothing to accept, `accept` does what the key does without this plugin.
  keymaps = {
    accept = '<M-l>',
    next = '<M-]>',
    prev = '<M-[>',
  },
}

--- The server's last `diffgemma/status`: `{ state = 'loading'|'ready'|'error', model, lastLatencyMs, message }`.
M.status = nil

local function on_status(_, params)
  M.status = params
  vim.api.nvim_exec_autocmds('User', { pattern = 'DiffgemmaStatus', modeline = false, data = params })
end

--- A short status for a statusline, e.g. `diffgemma: ready 123 ms`; '' before the server reports.
function M.statusline()
  local status = M.status
  if not status then
    return ''
  end
  if status.state == 'ready' and type(status.lastLatencyMs) == 'number' then
    return ('diffgemma: ready %d ms'):format(status.lastLatencyMs)
  end
  return 'diffgemma: ' .. status.state
end

local function set_keymaps(keymaps, bufnr)
  local function map(lhs, rhs, desc, expr)
    if lhs then
      vim.keymap.set('i', lhs, rhs, { buffer = bufnr, expr = expr, desc = desc })
    end
  end
  local accept = keymaps.accept
  map(accept, function()
    if vim.lsp.inline_completion.get() then
      return ''
    end
    return vim.keycode(accept)
  end, 'diffgemma: accept the inline completion', true)
  map(keymaps.next, function()
    vim.lsp.inline_completion.select({ count = 1 })
  end, 'diffgemma: next inline completion')
  map(keymaps.prev, function()
    vim.lsp.inline_completion.select({ count = -1 })
  end, 'diffgemma: previous inline completion')
end

--- Configure the `diffgemma` LSP config, enable it, and turn on inline completion for its buffers.
---@param opts? { cmd?: string[], settings?: table, filetypes?: string[], keymaps?: false|table }
function M.setup(opts)
  if vim.fn.has('nvim-0.12') == 0 or not vim.lsp.inline_completion then
    vim.notify('diffgemma: needs Neovim 0.12 or newer (vim.lsp.inline_completion)', vim.log.levels.ERROR)
    return
  end
  opts = vim.tbl_extend('force', M.defaults, opts or {})
  local keymaps = opts.keymaps and vim.tbl_extend('force', M.defaults.keymaps, opts.keymaps)
  -- an empty Lua table would go out as a JSON list
  local section = next(opts.settings) and opts.settings or vim.empty_dict()

  vim.lsp.config('diffgemma', {
    cmd = opts.cmd,
    filetypes = opts.filetypes,
    init_options = { diffgemma = section },
    settings = { diffgemma = section },
    handlers = { ['diffgemma/status'] = on_status },
    on_attach = function(client, bufnr)
      vim.lsp.inline_completion.enable(true, { client_id = client.id })
      if keymaps then
        set_keymaps(keymaps, bufnr)
      end
    end,
  })
  vim.lsp.enable('diffgemma')
end

return M
