from ringd.cli import app

app()
