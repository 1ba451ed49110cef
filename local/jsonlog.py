"""One JSON object per log line on stderr: the format of the local commands (the simulator, the
broker's process), readable by people and by ``jq``."""

from __future__ import annotations

import json
import logging
import sys

from chalicelib.protocol import timestamp_from_ms

_LOG_RECORD_FIELDS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": timestamp_from_ms(int(record.created * 1000)),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        line.update({k: v for k, v in vars(record).items() if k not in _LOG_RECORD_FIELDS})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def log_json_lines(level: int = logging.INFO) -> None:
    """Send every log record at ``level`` or above to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    logging.basicConfig(level=level, handlers=[handler])
