"""Data: sources → samples and splits (MVTec layout, benchmark sets, ELPV, synthetic), the torch Dataset, transforms, test-time degradations and the seeded splits the runner makes."""
