"""Jobs: their states, the rules that change them, their pages, and the routes that serve them."""
