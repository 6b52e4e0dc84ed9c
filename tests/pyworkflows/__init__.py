"""Real Python workflows on vercel-workflow's local world, run in-process (no Node) as test inputs."""
