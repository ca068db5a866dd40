"""mnistkit-query (placeholder until the build issue lands)."""
import click


@click.command()
def main() -> None:
    """Query a Seldon deployment (not yet implemented)."""
    click.echo("not yet implemented")
