"""placeholder while supervision is written"""
Child = DynamicSupervisor = Supervisor = None
