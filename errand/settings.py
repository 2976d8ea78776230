"""Settings of the ``errand`` CLI and client (``ERRAND_*`` environment variables)."""

import json
from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Where ``errand dev`` writes its URL and API key, so the CLI finds them.
DEV_STATE_FILE = Path(".errand") / "dev.json"


class ClientSettings(BaseSettings):
    """Where the API and notifier are, and the key to use."""

    model_config = SettingsConfigDict(
        env_prefix="ERRAND_", env_file=".env", env_ignore_empty=True, extra="ignore"
    )

    url: str | None = None
    notifier_url: str | None = None
    api_key: SecretStr | None = None

    def resolved(self) -> "ClientSettings":
        """Fill what is unset from a running ``errand dev`` in this folder, then defaults."""
        state = read_dev_state()
        url = self.url or state.get("url") or "http://127.0.0.1:8000"
        key = self.api_key or (SecretStr(state["api_key"]) if state.get("api_key") else None)
        notifier = self.notifier_url or state.get("notifier_url") or url
        return ClientSettings(url=url, notifier_url=notifier, api_key=key)


def read_dev_state(path: Path = DEV_STATE_FILE) -> dict[str, str]:
    """Return what ``errand dev`` wrote, or ``{}``."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}
