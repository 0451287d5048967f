"""Plans and desired state rendered for people (text), tools (JSON) and nftables."""

NO_CHANGES = "No changes. The kernel matches the config."
