"""Building blocks shared by the image, video and 4D networks (sgm `modules/` counterparts)."""
