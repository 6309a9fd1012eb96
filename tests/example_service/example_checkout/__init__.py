"""A checkout service that hands out coupons: the coupon worker's client, as its users write it."""
