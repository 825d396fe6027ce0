from rtgen.cli import run

run()
