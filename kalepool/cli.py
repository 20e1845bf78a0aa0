"""The `kale-pool` command."""

import typer

app = typer.Typer(help="kale-pool: pooled KALE farming on Stellar.", no_args_is_help=True)


@app.command()
def version() -> None:
    """Print the version."""
    from kalepool import __version__

    print(__version__)


def main() -> None:
    app()
