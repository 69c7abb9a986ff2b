from graft.cli import app

app()
