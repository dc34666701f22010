"""``pgbench`` running the very statements an endpoint runs: the database's ceiling.

The statements come from the ``db`` modules themselves, so the baseline
follows the code; ``$n`` parameters become pgbench variables drawn per
transaction, and ``-M prepared`` sends them as asyncpg does.
"""

import asyncio
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from shared.pg import SERVER_SETTINGS

_TPS = re.compile(r"^tps = ([\d.]+)", re.MULTILINE)
_PARAM = re.compile(r"\$(\d+)")


@dataclass(frozen=True, slots=True)
class PgbenchResult:
    tps: float


def pgbench_binary(bindir: Path) -> str:
    found = shutil.which("pgbench") or str(bindir / "pgbench")
    if not Path(found).exists():
        raise RuntimeError("pgbench not found: install postgresql-client or postgresql")
    return found


def write_script(path: Path, sql: str, draws: dict[int, str]) -> Path:
    """A pgbench script: ``\\set pN <expr>`` per parameter, then the statement."""
    lines = [f"\\set p{n} {expr}" for n, expr in sorted(draws.items())]
    lines.append(_PARAM.sub(lambda m: f":p{m.group(1)}", sql.strip()).rstrip(";") + ";")
    path.write_text("\n".join(lines) + "\n")
    return path


async def run(
    binary: str, dsn: str, script: Path, *, clients: int, seconds: float
) -> PgbenchResult:
    """``clients`` connections (the API's pool size), one pgbench thread, prepared statements."""
    # The API's own session settings (search_path, enable_seqscan, jit): the same SQL
    # planned the same way.
    env = {
        **os.environ,
        "PGOPTIONS": " ".join(
            f"-c {k}={v}" for k, v in SERVER_SETTINGS.items() if k != "application_name"
        ),
    }
    cmd = [
        binary,
        "-n",
        "-M",
        "prepared",
        "-c",
        str(clients),
        "-j",
        "1",
        "-T",
        str(max(round(seconds), 1)),
        "-f",
        str(script),
        dsn,
    ]
    proc = await asyncio.create_subprocess_exec(
        *cmd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    tps = _TPS.search(text)
    failed = re.search(r"number of failed transactions: (\d+)", text)
    if proc.returncode != 0 or tps is None or (failed is not None and int(failed.group(1)) > 0):
        raise RuntimeError(f"pgbench failed ({proc.returncode}): {text[-800:]}")
    return PgbenchResult(float(tps.group(1)))
