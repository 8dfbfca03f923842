"""The host's own Kailash nodes: a package named `nodes`, as the usual Kailash layout has, next to ours."""
