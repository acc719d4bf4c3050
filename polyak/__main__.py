from polyak.cli import main

main()
