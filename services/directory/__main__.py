from services.directory.store import DirectoryAdapter
from shared.worker.main import run_worker

run_worker("directory", DirectoryAdapter.from_env)
