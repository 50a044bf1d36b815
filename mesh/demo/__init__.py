"""Small demo workloads (the Star Wars deathstar) started inside endpoints by the examples."""
