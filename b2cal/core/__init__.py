"""What the engine and the conditions database share, at the bottom of the layers: experiment
and run coordinates and IoVs, basf2-style local databases of payload files, crash-safe writes
and checksums. It imports nothing else of b2cal but its errors."""
