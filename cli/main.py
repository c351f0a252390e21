"""The ``umarvel`` command line: the group, its error handling, and the commands of
``cli.admin``, ``cli.serve``, ``cli.data`` and ``cli.remote``."""

from __future__ import annotations

from typing import Any

import click

from cli import admin, data, remote, serve
from core.version import VERSION


class _Group(click.Group):
    """Expected failures end the command with one line and exit status 1, never a traceback:
    the project's errors, the API's (through the client), an unreachable or unmigrated
    database, an unreachable Redis, a setting out of range."""

    def invoke(self, ctx: click.Context) -> Any:
        from pydantic import ValidationError
        from redis.exceptions import ConnectionError as RedisDown
        from sqlalchemy.exc import DBAPIError

        from core.errors import UmarvelError
        from umarvel_client.errors import UmarvelClientError

        try:
            return super().invoke(ctx)
        except (UmarvelError, UmarvelClientError) as exc:
            raise click.ClickException(exc.message) from None
        except DBAPIError as exc:
            raise click.ClickException(_database_problem(exc)) from None
        except RedisDown as exc:
            raise click.ClickException(f"cannot reach Redis (UMARVEL_REDIS_URL): {exc}") from None
        except ValidationError as exc:
            if exc.title != "Settings":
                raise
            raise click.ClickException(_settings_problem(exc)) from None


def _settings_problem(exc: Any) -> str:
    """``UMARVEL_NAME: what is wrong`` for each setting pydantic refused."""
    problems = []
    for error in exc.errors():
        name = "_".join(str(part) for part in error["loc"]).upper()
        problems.append(f"UMARVEL_{name}: {error['msg']}" if name else error["msg"])
    return "invalid settings: " + "; ".join(problems)


def _database_problem(exc: Any) -> str:
    from sqlalchemy.engine import make_url

    from core.settings import get_settings

    url = make_url(get_settings().database_url).render_as_string(hide_password=True)
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
    if "does not exist" in reason or "no such table" in reason:
        return f"the database {url} is not migrated: run `umarvel db upgrade` ({reason})"
    return f"cannot use the database {url} (UMARVEL_DATABASE_URL): {reason}"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(VERSION, "--version", prog_name="umarvel")
def main() -> None:
    """umarvel-search: multimodal search with U-MARVEL recall and MLLM rerank.

    Commands that talk to a running API read UMARVEL_API and UMARVEL_API_KEY; the others
    read the same UMARVEL_* settings as the API and the workers.
    """


for command in (*admin.COMMANDS, *serve.COMMANDS, *data.COMMANDS):
    main.add_command(command)
main.add_command(remote.collections)
main.add_command(remote.documents)
main.add_command(remote.search)

if __name__ == "__main__":
    main()
