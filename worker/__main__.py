from worker.entrypoints.cli import main

main()
