"""``diffgemma-ls bench``: quality and speed of one model on the same infilling tasks, in one run.

Modules, one job each: ``tasks`` (what is asked), ``baseline`` (the non-model floor), ``worker``
(generation in a child process, one per quantization), ``sandbox`` (running HumanEval tests),
``metrics`` (scoring one completion), ``runner`` (orchestration and aggregation), ``lsp_latency``
(latency through a real LSP client), ``report`` (table, JSON, CSV, markdown, PNG), ``cli`` (flags).
"""
