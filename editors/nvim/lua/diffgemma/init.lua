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
  --- latencyBudgetMs, candidates, languages, threads (see the server's README).
  settings = {},
  --- The filetypes the server is started for; once the model is loaded, the plugin leaves the
  --- buffers whose language it does not complete (its `diffgemma/status` lists them).
  filetypes = { 'python', 'javascript', 'javascriptreact', 'typescript', 'typescriptreact', 'go', 'rust' },
  --- Keys in the buffers the server is attached to; `false` for none, or a key `false`.
  --- Insert mode: `accept`, `next`, `prev`; when there is nothing to accept, `accept` does what the key
  --- does without this plugin. Visual and normal mode: `fill` (`:DiffgemmaFill` on the selection, or on
  --- the empty body or TODO line at the cursor).
  keymaps = {
    accept = '<M-l>',
    next = '<M-]>',
    prev = '<M-[>',
    fill = '<M-f>',
  },
}

--- The outcome of the last fill: `{ applied = boolean, error = string|nil }`; nil before the first.
M.last_fill = nil

--- The server's last `diffgemma/status`: `{ state = 'loading'|'ready'|'error', model, lastLatencyMs,
--- languages, message, tunedFor, backend, backendDown }` (`languages`: the language ids the loaded
--- model completes; `backendDown`: why an HTTP backend is not answering).
M.status = nil

--- Whether the server completes `bufnr`'s filetype (unknown until the model is loaded: yes).
local function served(bufnr)
  local languages = M.status and M.status.languages
  return type(languages) ~= 'table' or vim.tbl_contains(languages, vim.bo[bufnr].filetype)
end

--- Leave the buffers whose language the loaded model does not complete: no requests, no keymaps.
local function detach_unserved(client_id)
  local client = vim.lsp.get_client_by_id(client_id)
  for bufnr in pairs(client and client.attached_buffers or {}) do
    if not served(bufnr) then
      vim.lsp.buf_detach_client(bufnr, client_id)
    end
  end
end

local function on_status(_, params, ctx)
  M.status = params
  if params.state == 'ready' then
    vim.schedule(function()
      detach_unserved(ctx.client_id)
    end)
  end
  vim.api.nvim_exec_autocmds('User', { pattern = 'DiffgemmaStatus', modeline = false, data = params })
end

--- A short status for a statusline, e.g. `diffgemma: ready 123 ms`; '' before the server reports.
function M.statusline()
  local status = M.status
  if not status then
    return ''
  end
  if status.backendDown then
    return 'diffgemma: backend down'
  end
  if status.state == 'ready' and type(status.lastLatencyMs) == 'number' then
    return ('diffgemma: ready %d ms'):format(status.lastLatencyMs)
  end
  return 'diffgemma: ' .. status.state
end

--- The LSP position of byte `col` (0-based) on line `row` (1-based), in the client's encoding.
local function lsp_position(bufnr, row, col, encoding)
  local line = vim.api.nvim_buf_get_lines(bufnr, row - 1, row, true)[1]
  col = math.min(col, #line)
  return { line = row - 1, character = col == 0 and 0 or vim.lsp.util.character_offset(bufnr, row - 1, col, encoding) }
end

--- Regenerate a region with the model. The server computes the replacement and applies it through the
--- LSP (`workspace/applyEdit`), so one `u` undoes it, and a buffer edited meanwhile is left alone.
---@param range? { [1]: integer, [2]: integer, [3]: integer, [4]: integer } start row, start col, end row,
---  end col: rows 1-based, byte columns 0-based, end exclusive; nil for the cursor (the server then picks
---  the empty function body or `TODO` line there)
---@param bufnr? integer
function M.fill(range, bufnr)
  bufnr = bufnr or vim.api.nvim_get_current_buf()
  local client = vim.lsp.get_clients({ bufnr = bufnr, name = 'diffgemma' })[1]
  if not client then
    vim.notify('diffgemma: the server is not attached to this buffer', vim.log.levels.WARN)
    return
  end
  if not range then
    local cursor = vim.api.nvim_win_get_cursor(0)
    range = { cursor[1], cursor[2], cursor[1], cursor[2] }
  end
  local enc = client.offset_encoding
  local lsp_range = {
    start = lsp_position(bufnr, range[1], range[2], enc),
    ['end'] = lsp_position(bufnr, range[3], range[4], enc),
  }
  vim.notify('diffgemma: filling...', vim.log.levels.INFO)
  local command = { title = 'Fill with DiffusionGemma', command = 'diffgemma.fill' }
  command.arguments = { vim.uri_from_bufnr(bufnr), lsp_range }
  client:exec_cmd(command, { bufnr = bufnr }, function(err, result)
    M.last_fill = { applied = (not err and result and result.applied) == true, error = err and err.message }
    if err then
      vim.notify('diffgemma: fill failed: ' .. err.message, vim.log.levels.ERROR)
    elseif not M.last_fill.applied then
      vim.notify('diffgemma: the model had nothing to fill here', vim.log.levels.WARN)
    end
  end)
end

--- `:DiffgemmaFill`: with a range from Visual mode, the selection (charwise for `v`, whole lines
--- otherwise); with a line range, those lines; without a range, the cursor.
local function fill_command(opts)
  if opts.range == 0 then
    return M.fill(nil)
  end
  local from, to = vim.api.nvim_buf_get_mark(0, '<'), vim.api.nvim_buf_get_mark(0, '>')
  if vim.fn.visualmode() == 'v' and from[1] == opts.line1 and to[1] == opts.line2 then
    local last = vim.api.nvim_buf_get_lines(0, to[1] - 1, to[1], true)[1]
    local col = math.min(to[2], math.max(#last - 1, 0))
    local stop = #last == 0 and 0 or col + 1 + vim.str_utf_end(last, col + 1) -- past the last character
    return M.fill({ from[1], from[2], to[1], stop })
  end
  local last = vim.api.nvim_buf_get_lines(0, opts.line2 - 1, opts.line2, true)[1]
  M.fill({ opts.line1, 0, opts.line2, #last })
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
  if keymaps.fill then
    local desc = 'diffgemma: fill the selection (or the empty body at the cursor) with the model'
    vim.keymap.set('x', keymaps.fill, ':DiffgemmaFill<CR>', { buffer = bufnr, silent = true, desc = desc })
    vim.keymap.set('n', keymaps.fill, '<Cmd>DiffgemmaFill<CR>', { buffer = bufnr, desc = desc })
  end
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
      if not served(bufnr) then
        vim.schedule(function()
          vim.lsp.buf_detach_client(bufnr, client.id)
        end)
        return
      end
      vim.lsp.inline_completion.enable(true, { client_id = client.id })
      if keymaps then
        set_keymaps(keymaps, bufnr)
      end
    end,
  })
  vim.lsp.enable('diffgemma')
  vim.api.nvim_create_user_command('DiffgemmaFill', fill_command, {
    range = true,
    desc = 'diffgemma: regenerate the selected lines (or the empty body at the cursor) with the model',
  })
end

return M
