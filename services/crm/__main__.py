from services.crm.store import CrmAdapter
from shared.worker.main import run_worker

run_worker("crm", CrmAdapter.from_env)
