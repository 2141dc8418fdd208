"""What every dfjax command line shares: one-line user errors, flag parsing, quiet libraries.

Every mistake in a command line (a flag, a config file, an override, a config value, a missing
bank or model, a workdir that holds another run) stops with one line on stderr,
`error: ...`, and exit status 2, before anything in the workdir changes; `user_errors` and
`parse_flags` make it so, and `run` is the entry points' `absl.app.run`.

Data flow: the top of the package, beside the entry points that use it (`dfjax.main`,
`dfjax.export`, `dfjax.mesh_sds`, `dfjax.evaluate`, `experiments/run_ablations.py`); it imports
dfjax.errors (and, for one message, dfjax.api's list of configs), so any of them may use
it.
"""
import contextlib
import os
import re
import sys
import warnings

from absl import app
from absl import flags

from dfjax.errors import UserError, one_line

FLAGS = flags.FLAGS

# glibc >= 2.35: back malloc's large blocks with transparent huge pages. XLA on CPU allocates
# each step's intermediates afresh (one attention matrix of a 64x64-latent U-Net is 1 GB), and
# with 4 KiB pages the kernel's page faults, not the arithmetic, bound writing them: the bank
# setup's train step ran 1.26x faster with huge pages alone (experiments/results/bench.md,
# "Train step: ... new with huge pages", compare_step.py with the old tree at the same code).
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
HUGE_PAGES_OPT_OUT = "DFJAX_HUGE_PAGES"  # "0" keeps the environment as it is


def huge_pages_environment(environ, platform: str = sys.platform) -> dict | None:
  """The environment a command should run in to use huge pages, or None if it already does.

  Args:
    environ: the current environment (a mapping).
    platform: sys.platform; the tunable is glibc's, so only Linux gets it.

  Returns:
    a copy of `environ` with HUGE_PAGES_TUNABLE appended to GLIBC_TUNABLES (colon-separated,
    glibc's syntax), or None: not Linux, opted out, or a hugetlb tunable already set (the
    user's own value is kept).
  """
  tunables = environ.get("GLIBC_TUNABLES", "")
  if (not platform.startswith("linux") or environ.get(HUGE_PAGES_OPT_OUT) == "0"
      or "glibc.malloc.hugetlb" in tunables):
    return None
  return dict(environ, GLIBC_TUNABLES=":".join(filter(None, (tunables, HUGE_PAGES_TUNABLE))))


def started_as_command(orig_argv, argv) -> bool:
  """Whether this process was started as the command now running (`python -m MODULE ARGS` or
  `python SCRIPT ARGS`), not, say, a notebook kernel that ran the module, whose process a
  restart would replace.

  Args:
    orig_argv: sys.orig_argv, the interpreter's own command line.
    argv: sys.argv, the command's (argv[0] is the script or module file).
  """
  start = len(orig_argv) - len(argv)
  if start < 1 or list(orig_argv[start + 1:]) != list(argv[1:]):
    return False
  program = orig_argv[start]
  return program == argv[0] or orig_argv[start - 1] == "-m"


def restart_with_huge_pages() -> None:
  """Re-executes this command (same interpreter, same arguments) with huge pages on.

  glibc reads its tunables once, at process start, so the setting cannot be made from inside;
  the command starts again before JAX is imported (a fraction of a second). Nothing happens
  when `huge_pages_environment` returns None, which it does in the restarted process, or when
  the process was not started as this command.
  """
  environment = huge_pages_environment(os.environ)
  if environment is None or not started_as_command(sys.orig_argv, sys.argv):
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, environment)


@contextlib.contextmanager
def user_errors():
  """Turn a UserError into one line on stderr and exit status 2 (no traceback)."""
  try:
    yield
  except UserError as error:
    print(f"error: {one_line(str(error))}", file=sys.stderr, flush=True)
    sys.exit(2)


def check_command_line(argv, *, usage: str, config_example: str,
                       workdir_example: str | None = None) -> None:
  """What every entry point checks first: no positional arguments, --config given, and
  --workdir given where the command has one (`workdir_example` not None)."""
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; flags look like {usage}")
  if FLAGS.config is None:
    raise UserError(f"--config is required, e.g. --config={config_example}")
  if workdir_example is not None and not FLAGS.workdir:
    raise UserError(f"--workdir is required, e.g. --workdir={workdir_example}")


def quiet_libraries():
  """Library INFO logs (orbax's per-save lines, JAX's backend probing) would drown the
  progress lines: log warnings and errors only, unless --verbosity was given.

  Called by `parse_flags`, before absl's `app.run` would set the verbosity to INFO.
  """
  from absl import logging  # pylint: disable=g-import-not-at-top
  if FLAGS["verbosity"].using_default_value:
    FLAGS.verbosity = logging.WARNING


def _config_file_argument(argv) -> str | None:
  """The value of --config in `argv` ("configs/toy.py" or "configs/toy.py:ARG"), or None."""
  for i, arg in enumerate(argv[1:], start=1):
    match = re.fullmatch(r"--?config(=(.*))?", arg, flags=re.DOTALL)
    if match:
      if match.group(1) is not None:
        return match.group(2)
      return argv[i + 1] if i + 1 < len(argv) else ""
  return None


def _check_config_file(argv) -> None:
  """A missing config file, named with the configs that exist (before any parsing)."""
  value = _config_file_argument(argv)
  if value is None:
    return
  path = value.split(":", 1)[0]
  if not os.path.isfile(path):
    from dfjax import api  # pylint: disable=g-import-not-at-top
    raise UserError(f"--config={value}: no such config file; the configs are "
                    + ", ".join(f"configs/{name}.py" for name in api.config_names()))


def _unknown_field_message(error: Exception, argv) -> str | None:
  """'--config.train.stepz: the config has no field 'stepz' (did you mean ...)', or None.

  ml_collections raises a KeyError (or an AttributeError wrapping one) whose message is the
  missing name on its first line, then a "Did you mean" hint.
  """
  text = error
  while isinstance(text, BaseException):
    text = text.args[0] if text.args else ""
  lines = [line.strip() for line in str(text).splitlines() if line.strip()]
  if not lines:
    return None
  name = lines[0].strip("'\"")
  for arg in argv[1:]:
    flag = arg.split("=", 1)[0]
    if flag.lstrip("-").startswith("config.") and name in flag.lstrip("-").split("."):
      hint = " ".join(lines[1:])
      hint = f" ({hint[0].lower()}{hint[1:]})" if hint else ""
      return f"{flag}: the config has no field {name!r}{hint}"
  return None


def parse_flags(argv) -> list[str]:
  """absl flags parser: FLAGS(argv), with every mistake as one line and exit status 2.

  absl's own parser prints a multi-line "FATAL Flags parsing error", and ml_collections'
  config flag raises OSError, KeyError or AttributeError with tracebacks; here each becomes
  `error: <what is wrong>` on stderr.
  """
  with user_errors():
    _check_config_file(argv)
    try:
      remaining = FLAGS(argv)
    except flags.Error as error:
      if "Traceback (most recent call last)" in str(error):  # the config file itself raised
        raise UserError(_config_load_message(error, argv)) from None
      raise UserError(f"{one_line(error)} (see --helpshort)") from None
    except (KeyError, AttributeError) as error:
      message = _unknown_field_message(error, argv)
      if message is None:
        raise UserError(_config_load_message(error, argv)) from None
      raise UserError(message) from None
    except Exception as error:  # pylint: disable=broad-except
      raise UserError(_config_load_message(error, argv)) from None
  quiet_libraries()
  return remaining


def _config_load_message(error: Exception, argv) -> str:
  """`--config=FILE` failed to import or to run: its last line says why."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  reason = lines[-1] if lines else ""
  if not re.match(r"^\w+(Error|Exception): ", reason):
    reason = f"{type(error).__name__}: {reason}" if reason else type(error).__name__
  return f"cannot load --config={_config_file_argument(argv)}: {reason}"


def run(main_fn):
  """The CLI entry point: absl's app.run with one-line flag errors.

  JAX, Flax, orbax and diffusers are imported after this point (inside `main_fn`), so their
  import-time deprecation notices are silenced here; a library user keeps them. On Linux the
  command first restarts itself with huge pages (`restart_with_huge_pages`).
  """
  restart_with_huge_pages()
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  warnings.filterwarnings("ignore", category=FutureWarning)
  warnings.filterwarnings("ignore", category=DeprecationWarning)
  app.run(main_fn, flags_parser=parse_flags)
