"""``aftlib serve``: topologies as OpenAI-compatible chat models over HTTP."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import configure_output, log_json_option, verbose_option, verbosity

__all__ = ("serve_command",)

SERVE_HELP = """Serve topologies as OpenAI-compatible chat models: POST /v1/chat/completions (streamed
or not), GET /v1/models, GET /health, and a playground page at /.

--config takes a topology file or the AFT reference YAML (one model, named by --name or the file's
stem), or a file naming several: models: {NAME: TOPOLOGY_FILE, ...} with optional aliases:
{ALIAS: NAME}. The engines start once, before the server listens. On SIGINT or SIGTERM the server
stops taking requests, lets running ones finish for --grace seconds, then cancels the rest.

Exit status: 2 a bad config (nothing served); 130 / 143 stopped by Ctrl-C / SIGTERM.
"""


@click.command("serve", help=SERVE_HELP, short_help="Serve topologies as an OpenAI-compatible API.")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="A topology file, an AFT reference config, or a file of models: {NAME: FILE}.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="The port to listen on.")
@click.option(
    "--name", metavar="NAME", help="The model name of a single-topology config (default: its stem)."
)
@click.option(
    "--api-key-env",
    metavar="VAR",
    help="Require one of the keys in this environment variable "
    "(comma-separated) as 'Authorization: Bearer KEY'.",
)
@click.option(
    "--api-key-file",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="Require one of the keys in FILE (one a line).",
)
@click.option(
    "--max-in-flight",
    default=8,
    show_default=True,
    type=click.IntRange(min=1),
    metavar="K",
    help="Topology runs at once.",
)
@click.option(
    "--max-queue",
    default=32,
    show_default=True,
    type=click.IntRange(min=0),
    metavar="Q",
    help="Requests waiting for a run slot; beyond that the answer is 429 with retry-after.",
)
@click.option(
    "--keepalive",
    default=5.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    metavar="S",
    help="Seconds of silence on a stream before a keep-alive comment.",
)
@click.option(
    "--grace",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0),
    metavar="S",
    help="Seconds running requests may finish after SIGTERM before they are cancelled.",
)
@log_json_option
@verbose_option
def serve_command(
    config_path: Path,
    host: str,
    port: int,
    name: str | None,
    api_key_env: str | None,
    api_key_file: Path | None,
    max_in_flight: int,
    max_queue: int,
    keepalive: float,
    grace: float,
    log_json: bool,
) -> None:
    """``aftlib serve``."""  # fmt: skip
    from ..serve import create_app, load_models, read_api_keys, serve

    configure_output(max(verbosity(click.get_current_context()), 1), log_json)
    models = load_models(config_path, name=name)
    keys = read_api_keys(api_key_env, api_key_file)
    app = create_app(
        models.topologies, aliases=models.aliases, api_keys=keys, max_in_flight=max_in_flight,
        max_queue=max_queue, keepalive=keepalive,
    )  # fmt: skip
    shown = "localhost" if host in ("127.0.0.1", "::1") else host
    click.echo(f"aftlib serve: http://{shown}:{port}/v1 (playground: http://{shown}:{port}/)", err=True)
    click.echo(f"aftlib serve: models: {', '.join(models.names)}", err=True)
    if keys is not None:
        click.echo(f"aftlib serve: {len(keys)} API key(s) required", err=True)
    serve(app, host=host, port=port, grace=grace)
