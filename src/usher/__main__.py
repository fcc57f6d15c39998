from usher.cli import main

main()
