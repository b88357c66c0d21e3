"""Operations: /+status, /+metrics, gen-config and fsck."""
