"""`python -m contracts`: the `coupon-contracts` command line (`contracts.cli`)."""

from contracts.cli import main

if __name__ == "__main__":
    main()
