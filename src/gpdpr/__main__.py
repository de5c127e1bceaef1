from gpdpr.cli import app

app()
