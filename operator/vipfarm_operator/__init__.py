"""The vipfarm Kopf operator (import name vipfarm_operator; the folder is operator/)."""
