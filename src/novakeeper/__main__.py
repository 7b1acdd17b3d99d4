from novakeeper.cli import main

main()
