from imaginet_shards.cli import main

main()
