"""The web console's page (index.html), shipped as package data and served by nodeagent/console.py."""
