"""beats-pipeline, reporting: metrics parsed from fairseq's logs and the summary table."""

import json
import re
from pathlib import Path
from typing import Dict, List, Tuple

from .pipeline_stages import Stage

# ---------------------------------------------------------------------------- logs and metrics
_LINE = re.compile(r"\]\[(train_inner|train|valid)\]\[INFO\] - (.*)$")


def _number(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def parse_metrics_line(kind: str, body: str) -> Dict[str, object]:
    body = body.strip()
    if body.startswith("{"):
        try:
            raw = json.loads(body)
        except json.JSONDecodeError:
            return {}
        out = {}
        for k, v in raw.items():
            for prefix in ("train_", "valid_"):
                if k.startswith(prefix):
                    k = k[len(prefix):]
            out[k] = _number(str(v))
        return out
    out = {}
    if kind == "train_inner":
        body = re.sub(r"^epoch \d+:\s+\d+ / \d+\s*", "", body)
        for part in body.split(", "):
            k, sep, v = part.partition("=")
            if sep:
                out[k.strip()] = _number(v.strip())
        return out
    for part in body.split(" | "):
        k, sep, v = part.strip().partition(" ")
        if sep and k not in ("valid",):
            out[k] = _number(v.strip())
    return out


def read_records(log_path: Path) -> List[Tuple[str, Dict[str, object]]]:
    """Every metrics line of a fairseq log, in order: ``(kind, metrics)``, kind ``train_inner``
    (every ``common.log_interval`` updates), ``train`` (epoch summary) or ``valid``."""
    records: List[Tuple[str, Dict[str, object]]] = []
    if not log_path.is_file():
        return records
    with open(log_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = _LINE.search(line)
            if m:
                metrics = parse_metrics_line(m.group(1), m.group(2))
                if metrics:
                    records.append((m.group(1), metrics))
    return records


def read_metrics(log_path: Path) -> Dict[str, Dict[str, object]]:
    """Last ``train`` (epoch summary), ``valid`` and ``train_inner`` metrics of a fairseq log."""
    return dict(read_records(log_path))


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _fmt(value, digits: int = 4) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))
    return str(value)


def stage_row(stage: Stage, entry: dict) -> dict:
    metrics = entry.get("metrics") or {}
    train, valid, inner = metrics.get("train", {}), metrics.get("valid", {}), metrics.get("train_inner", {})
    row = {"stage": stage.name, "what": stage.title, "status": entry.get("status", "pending"),
           "seconds": round(float(entry.get("seconds", 0.0)), 1),
           "updates": valid.get("num_updates", train.get("num_updates", inner.get("num_updates"))),
           "train_loss": train.get("loss", inner.get("loss")), "valid_loss": valid.get("loss")}
    if stage.kind == "pretrain":
        row["score_name"], row["score"] = "masked acc.", valid.get("accuracy", train.get("accuracy"))
        row["code_usage"] = valid.get("code_usage", train.get("code_usage"))
        row["code_perplexity"] = valid.get("code_perplexity", train.get("code_perplexity"))
    elif stage.kind == "tokenizer":
        row["score_name"], row["score"] = "cosine", valid.get("cosine", train.get("cosine"))
        row["code_usage"] = train.get("code_usage", inner.get("code_usage"))
        row["code_perplexity"] = valid.get("code_perplexity", train.get("code_perplexity"))
    elif stage.kind == "finetune":
        name = "mAP" if "mAP" in valid else "accuracy"
        row["score_name"], row["score"] = name, valid.get(name)
    return row


def stage_table(rows: List[dict]) -> str:
    lines = ["| stage | what | updates | train loss | valid loss | masked acc. / cosine / acc. | codebook usage "
             "(perplexity) | time | status |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        score = "-" if r.get("score") is None else f"{_fmt(r['score'])} ({r['score_name']})"
        usage = "-" if r.get("code_usage") is None else \
            f"{_fmt(r['code_usage'], 3)} ({_fmt(r.get('code_perplexity'), 1)})"
        updates = "-" if r.get("updates") is None else str(int(float(r["updates"])))
        lines.append(f"| {r['stage']} | {r['what']} | {updates} | {_fmt(r.get('train_loss'))} | "
                     f"{_fmt(r.get('valid_loss'))} | {score} | {usage} | {format_seconds(r['seconds'])} | "
                     f"{r['status']} |")
    return "\n".join(lines)


def progress_text(line: str) -> str:
    """``"train_inner: num_updates=10 loss=3.1 ..."`` for a fairseq metrics line, else ``""``."""
    m = _LINE.search(line)
    if not m:
        return ""
    metrics = parse_metrics_line(m.group(1), m.group(2))
    keys = ("num_updates", "loss", "accuracy", "cosine", "mAP", "code_usage")
    return f"{m.group(1)}: " + " ".join(f"{k}={_fmt(metrics[k])}" for k in keys if k in metrics)
