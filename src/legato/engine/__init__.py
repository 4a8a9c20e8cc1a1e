"""The engine: a pure decider and the asyncio runtime that applies its decisions durably."""
