"""Exit codes of every command (other tools depend on them)."""

EXIT_OK = 0  # success: an empty completion or fill included
EXIT_MODEL = 1  # the model cannot load
EXIT_USAGE = 2  # bad usage
