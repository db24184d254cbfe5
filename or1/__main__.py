from or1.train import main

main()
