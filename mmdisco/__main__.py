from mmdisco.cli import main

main()
