"""Models, versions, aliases, the artifact store and the metadata database."""
