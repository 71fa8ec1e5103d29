"""Log lines: ``minirun: message`` on standard error, or records in the ``--log`` file.

minirun often lives for a few milliseconds, and importing the logging package costs a
noticeable share of that; so messages below the chosen level cost one comparison, and plain
stderr lines are written directly. The logging package is used only when there is a log
file (``--log``, which conmon and containerd-shim read) or for ``--debug``. Levels follow
logging's numbers; ``MINIRUN_LOG`` or the command line chooses one.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40
_NAMES = {"DEBUG": DEBUG, "INFO": INFO, "WARNING": WARNING, "WARN": WARNING, "ERROR": ERROR}


class _Settings:
    level = WARNING
    file: str | None = None
    json = False
    standard = False  # records go through the logging package (a file, --debug, images)


settings = _Settings()


def level_named(name: str, default: int = WARNING) -> int:
    return _NAMES.get(name.upper(), default)


def setup(level: int, file: str | None = None, json_format: bool = False,
          standard: bool = False) -> None:
    settings.level, settings.file, settings.json = level, file, json_format
    if file is not None or standard or level <= DEBUG:
        use_standard_logging()


def use_standard_logging() -> None:
    """Route everything through the logging package (for modules that use it directly)."""
    if settings.standard:
        return
    import logging

    settings.standard = True
    logging.basicConfig(format="minirun: %(message)s", level=settings.level)
    if settings.file is not None:
        handler = logging.FileHandler(settings.file)
        handler.setFormatter(_file_formatter())
        logging.getLogger().addHandler(handler)


def _file_formatter() -> logging.Formatter:
    """Text lines, or the ``{"level", "msg", "time"}`` JSON lines that conmon and
    containerd-shim read (runc's --log-format json)."""
    import json
    import logging
    import time

    class JsonFormatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
            return json.dumps({"level": record.levelname.lower().replace("warning", "warn"),
                               "msg": record.getMessage(), "time": stamp})

    if settings.json:
        return JsonFormatter()
    return logging.Formatter("%(asctime)s %(levelname)s %(message)s")


def to_file(level: int, message: str) -> None:
    """Write one record to the --log file only (stderr has had the message already)."""
    if settings.file is None:
        return
    import logging

    record = logging.LogRecord("minirun", level, "", 0, message, None, None)
    with open(settings.file, "a") as stream:
        stream.write(_file_formatter().format(record) + "\n")


class Log:
    """A named logger with logging's methods, cheap when its messages are not wanted."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _emit(self, level: int, message: str, args: tuple[object, ...],
              exc_info: bool = False) -> None:
        if level < settings.level:
            return
        if settings.standard:
            import logging

            logging.getLogger(self.name).log(level, message, *args, exc_info=exc_info)
            return
        sys.stderr.write("minirun: " + (message % args if args else message) + "\n")

    def debug(self, message: str, *args: object) -> None:
        self._emit(DEBUG, message, args)

    def info(self, message: str, *args: object) -> None:
        self._emit(INFO, message, args)

    def warning(self, message: str, *args: object) -> None:
        self._emit(WARNING, message, args)

    def error(self, message: str, *args: object) -> None:
        self._emit(ERROR, message, args)

    def exception(self, message: str, *args: object) -> None:
        self._emit(ERROR, message, args, exc_info=True)


def get(name: str) -> Log:
    return Log(name)
