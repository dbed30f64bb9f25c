"""msgs"""
