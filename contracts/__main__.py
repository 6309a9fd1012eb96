from contracts.schema import main

main()
