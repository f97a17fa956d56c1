"""What each CLI command does, in terms of the library (argument parsing stays in ``hubmerge.cli``).

One module per family of commands; ``cmd_<name>(args)`` runs ``hubmerge <name>`` and returns its exit code.
"""

from hubmerge.commands.cards import cmd_card, cmd_lineage, cmd_reproduce, cmd_verify
from hubmerge.commands.evolve import cmd_eval, cmd_evolve
from hubmerge.commands.merge import cmd_demo, cmd_merge, cmd_moe, cmd_validate
from hubmerge.commands.push import cmd_finalize, cmd_plan, cmd_push
from hubmerge.commands.tools import cmd_extract_lora, cmd_tokensurgeon
from hubmerge.commands.watch import cmd_check, cmd_sync, cmd_webhook_serve

__all__ = ["cmd_card", "cmd_check", "cmd_demo", "cmd_eval", "cmd_evolve", "cmd_extract_lora", "cmd_finalize",
           "cmd_lineage", "cmd_merge", "cmd_moe", "cmd_plan", "cmd_push", "cmd_reproduce", "cmd_sync",
           "cmd_tokensurgeon", "cmd_validate", "cmd_verify", "cmd_webhook_serve"]
