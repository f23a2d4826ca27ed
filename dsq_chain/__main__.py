from dsq_chain.cli import main

main()
