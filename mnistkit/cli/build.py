"""mnistkit-build (placeholder until the build issue lands)."""
import click


@click.command()
def main() -> None:
    """Package a trained model as a Seldon image (not yet implemented)."""
    click.echo("not yet implemented")
